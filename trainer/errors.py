"""The one exception type for a user's mistake: the CLI prints its message, no traceback."""


class UserError(Exception):
    """Bad input (config value, file, data): the message says what and how to fix it."""


def oom_message(device: object, batch_size: int, precision: str, accumulate: int) -> str:
    """What to do about an out-of-memory error in training."""
    return (
        f"out of memory on {device} at data.batch_size={batch_size} (precision {precision}). "
        f"Lower data.batch_size (e.g. {max(1, batch_size // 2)}) and keep the effective batch with "
        f"trainer.accumulate={2 * accumulate}, or use trainer.precision=bf16 (or fp16) to halve "
        "activation memory."
    )
