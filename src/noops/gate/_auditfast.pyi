from typing import Any

MAX_VARIABLES: int

class Template:
    def __init__(self, head: bytes, rest: bytes, rest_order: tuple[int, ...], line: bytes,
                 line_order: tuple[int, ...], variables: int) -> None: ...

def chain(items: list[Any], start: int, seq: int, prev_hash: str, size: int, max_bytes: int,
          out: list[tuple[int, str, str]]) -> tuple[bytes, int, int, str, int]: ...
