"""One module per document format, each with one ``extract_<format>(path, progress)``
generator of Sections; ``pipeline/extract.py`` chooses among them and turns parser errors
into ``ExtractionError``. Shared helpers: ``text`` (normalisation, charsets, grouping),
``tables`` (rows as lines), ``ooxml`` (zip containers, decompression bombs, encrypted
Office files)."""
