"""The Gradio app's tabs and shared pieces; they build on engine callables and never on tensors."""
