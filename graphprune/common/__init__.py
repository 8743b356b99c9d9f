"""What every stage uses: torch.distributed's few primitives, where in the user's code, giving freed memory back."""
