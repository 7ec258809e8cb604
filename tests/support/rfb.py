"""An RFB (VNC) client for tests, speaking through a console websocket the way noVNC does.

`first_frame` does the client's half of the handshake (RFC 6143): protocol version, security
type None, ClientInit (shared), SetEncodings (Raw only, so every pixel arrives as-is), one
FramebufferUpdateRequest for the whole screen; then it reads the FramebufferUpdate and counts
the distinct pixel values in it (one value: a blank screen). `type_text` then types into the
guest as a person at a US keyboard would: KeyEvents, Shift held for the shifted characters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection

SECURITY_NONE = 1
RAW = 0


class Stream:
    """Bytes over a websocket whose message boundaries mean nothing (as for noVNC)."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.buffer = bytearray()

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            message = await self.socket.recv()
            self.buffer += message if isinstance(message, bytes) else message.encode()
        chunk = bytes(self.buffer[:size])
        del self.buffer[:size]
        return chunk

    async def write(self, data: bytes) -> None:
        await self.socket.send(data)


@dataclass(frozen=True)
class Frame:
    version: bytes
    width: int
    height: int
    name: bytes
    rectangles: int
    colours: int  # distinct pixel values in the update


async def first_frame(socket: ClientConnection) -> Frame:
    stream = Stream(socket)
    version = await stream.read(12)
    assert version.startswith(b"RFB 003.00"), version
    await stream.write(b"RFB 003.008\n")
    count = (await stream.read(1))[0]
    assert count, "the server refused: " + (await stream.read(struct.unpack(">I", await stream.read(4))[0])).decode()
    types = await stream.read(count)
    assert SECURITY_NONE in types, f"security types {list(types)}: None is not offered"
    await stream.write(bytes([SECURITY_NONE]))
    assert await stream.read(4) == b"\0\0\0\0", "security handshake failed"
    await stream.write(b"\x01")  # ClientInit: shared, like noVNC
    width, height = struct.unpack(">HH", await stream.read(4))
    pixel_format = await stream.read(16)
    bytes_per_pixel = pixel_format[0] // 8
    name = await stream.read(struct.unpack(">I", await stream.read(4))[0])
    await stream.write(struct.pack(">BxHi", 2, 1, RAW))  # SetEncodings: Raw
    await stream.write(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))  # FramebufferUpdateRequest
    while True:
        kind = (await stream.read(1))[0]
        if kind == 0:  # FramebufferUpdate
            break
        if kind == 2:  # Bell
            continue
        if kind == 3:  # ServerCutText
            await stream.read(3)
            await stream.read(struct.unpack(">I", await stream.read(4))[0])
            continue
        raise AssertionError(f"unexpected server message {kind}")
    _, rectangles = struct.unpack(">BH", await stream.read(3))
    colours: set[bytes] = set()
    for _ in range(rectangles):
        _, _, w, h, encoding = struct.unpack(">HHHHi", await stream.read(12))
        if encoding == RAW:
            pixels = await stream.read(w * h * bytes_per_pixel)
            colours.update(pixels[i:i + bytes_per_pixel] for i in range(0, len(pixels), bytes_per_pixel))
    return Frame(version=version, width=width, height=height, name=name, rectangles=rectangles,
                 colours=len(colours))


KEY_EVENT = 4
SHIFT_L = 0xFFE1
RETURN = 0xFF0D
# What a US keyboard types with Shift held.
SHIFTED = set('~!@#$%^&*()_+{}|:"<>?ABCDEFGHIJKLMNOPQRSTUVWXYZ')


async def type_text(socket: ClientConnection, text: str) -> None:
    """Presses and releases the keys of `text` (ASCII; a newline is Return)."""

    async def key(keysym: int, down: bool) -> None:
        await socket.send(struct.pack(">BBxxI", KEY_EVENT, int(down), keysym))

    for char in text:
        keysym = RETURN if char == "\n" else ord(char)
        shifted = char in SHIFTED
        if shifted:
            await key(SHIFT_L, True)
        await key(keysym, True)
        await key(keysym, False)
        if shifted:
            await key(SHIFT_L, False)
