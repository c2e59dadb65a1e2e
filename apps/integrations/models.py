"""Models arrive with this app's issue; the app is registered now so its schema placement is fixed."""
