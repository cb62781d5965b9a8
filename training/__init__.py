"""BioCLIP 2 training stage: open_clip model plus replay projector, WebDataset streams, loss, loop."""
