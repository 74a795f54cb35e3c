"""`sdlab serve`: the deep dive in a browser -- a Gradio page over the library (app.py builds
it; service.py is its one door into the library; serving.py bounds what a request may do)."""
