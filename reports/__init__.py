"""Reports: self-contained HTML comparison reports, charts (SVG), CSV/Markdown tables, audio samples."""
