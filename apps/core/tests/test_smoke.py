def test_me_on_acme(acme, seed_user, client_for):
    user = seed_user(acme, "agent")
    response = client_for(acme, user).get("/api/v1/me")
    assert response.status_code == 200, response.content
    assert response.json()["email"] == "agent@acme.test"
    assert response.json()["tenant"]["schema"] == "acme"
