"""The dashboard's page scripts (run by app.py through st.navigation) and what they share (``_shared``).

A regular package, so ``from pages import _shared`` always finds this folder first (next to app.py)."""
