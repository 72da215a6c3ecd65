"""Layer 3: the flow — losses, gradients, truncation maps, the separated form,
exact solutions and output-layer flows (docs/theory.md §§2–8), on any backend."""
