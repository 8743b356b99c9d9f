"""Stage 7, the user's model: the slim model as the user's own class, its checkpoints and Hugging Face config."""
