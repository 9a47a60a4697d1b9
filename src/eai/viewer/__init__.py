"""See it: a self-contained page per explained clip (`eai explain --html`) and a local web app (`eai serve`)."""
