"""The web UI at /ui: server-rendered pages, inline SVG charts, a little hand-written JS."""
