"""Minimal OpenEXR reader/writer (numpy + zlib) for the depth maps DUSt3R's preprocessing writes.

BlendedMVS depth is written by `cv2.imwrite` as single-part scanline OpenEXR 2, one FLOAT
channel `Y`, ZIP compression. OpenCV is not a dependency and its PyPI 5.x
wheels cannot read EXR at all, so we decode the format ourselves. Supported: scanline images,
compression NONE / ZIPS / ZIP, channels of type UINT, HALF or FLOAT. Anything else raises.
"""
import struct
import zlib

import numpy as np

_MAGIC = 20000630
_LINES_PER_CHUNK = {0: 1, 2: 1, 3: 16}  # NONE, ZIPS (one line), ZIP (16 lines)
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _read_header(buf, path):
    magic, version = struct.unpack_from("<ii", buf, 0)
    if magic != _MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file (bad magic number)")
    if version & 0x1A00:  # tiled (0x200), multi-part (0x1000) or deep (0x800)
        raise ValueError(f"{path}: only single-part scanline EXR is supported (flags {version:#x})")
    pos, header = 8, {}
    while buf[pos] != 0:
        name_end = buf.index(b"\0", pos)
        type_end = buf.index(b"\0", name_end + 1)
        name, typ = buf[pos:name_end].decode(), buf[name_end + 1:type_end].decode()
        (size,) = struct.unpack_from("<i", buf, type_end + 1)
        header[name] = (typ, buf[type_end + 5:type_end + 5 + size])
        pos = type_end + 5 + size
    return header, pos + 1


def _channels(raw):
    # chlist: repeated (name\0, int32 pixel type, u8 pLinear, 3 reserved, int32 xs, int32 ys), then \0
    out, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        ptype, _, xs, ys = struct.unpack_from("<iI ii", raw, end + 1)
        if (xs, ys) != (1, 1):
            raise ValueError("sub-sampled EXR channels are not supported")
        out.append((raw[pos:end].decode(), ptype))
        pos = end + 17
    return out


def _unzip(data, raw_size):
    # zlib, then undo the byte predictor, then undo the two-half interleave (OpenEXR ImfZip.cpp)
    d = np.frombuffer(zlib.decompress(data), np.uint8)
    if d.size != raw_size:
        raise ValueError(f"ZIP chunk inflates to {d.size} bytes, expected {raw_size}")
    t = (np.cumsum(d.astype(np.int64) - 128) + 128).astype(np.uint8)  # t[i] = t[i-1] + d[i] - 128
    out = np.empty_like(t)
    half = (t.size + 1) // 2
    out[0::2], out[1::2] = t[:half], t[half:]
    return out


def read_exr(path):
    """Read an EXR file -> float32 (H, W) for one channel, else dict name -> (H, W) array."""
    with open(path, "rb") as f:
        buf = f.read()
    try:
        header, pos = _read_header(buf, path)
        chans = _channels(header["channels"][1])
        comp = header["compression"][1][0]
        x0, y0, x1, y1 = struct.unpack("<iiii", header["dataWindow"][1])
    except (KeyError, IndexError, struct.error, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: malformed EXR header ({err!r})") from err
    if comp not in _LINES_PER_CHUNK:
        raise ValueError(f"{path}: EXR compression type {comp} not supported (NONE, ZIPS, ZIP only)")
    W, H = x1 - x0 + 1, y1 - y0 + 1
    dts = [_PIXEL_DTYPES[p] for _, p in chans]
    line_bytes = W * sum(dt.itemsize for dt in dts)
    lpc = _LINES_PER_CHUNK[comp]
    n_chunks = -(-H // lpc)
    offsets = np.frombuffer(buf, "<u8", n_chunks, pos)
    planes = [np.empty((H, W), dt) for dt in dts]
    for off in offsets:
        y, size = struct.unpack_from("<ii", buf, int(off))
        n_lines = min(lpc, y1 + 1 - y)
        data = buf[int(off) + 8:int(off) + 8 + size]
        raw_size = n_lines * line_bytes
        raw = np.frombuffer(data, np.uint8) if size == raw_size else _unzip(data, raw_size)
        raw = raw.reshape(n_lines, line_bytes)  # each line: channel 0 row, channel 1 row, ...
        col = 0
        for plane, dt in zip(planes, dts):
            nb = W * dt.itemsize
            plane[y - y0:y - y0 + n_lines] = raw[:, col:col + nb].copy().view(dt)
            col += nb
    planes = [p.astype(np.float32) if p.dtype == np.float16 else p for p in planes]
    if len(planes) == 1:
        return planes[0]
    return {name: p for (name, _), p in zip(chans, planes)}


def write_exr(path, depth):
    """Write float32 (H, W) as single-channel 'Y' ZIP EXR, the layout cv2.imwrite produces."""
    depth = np.ascontiguousarray(depth, dtype="<f4")
    H, W = depth.shape

    def attr(name, typ, data):
        return name.encode() + b"\0" + typ.encode() + b"\0" + struct.pack("<i", len(data)) + data

    box = struct.pack("<iiii", 0, 0, W - 1, H - 1)
    header = b"".join([
        struct.pack("<ii", _MAGIC, 2),
        attr("channels", "chlist", b"Y\0" + struct.pack("<iI ii", 2, 0, 1, 1) + b"\0"),
        attr("compression", "compression", b"\x03"),
        attr("dataWindow", "box2i", box), attr("displayWindow", "box2i", box),
        attr("lineOrder", "lineOrder", b"\0"), attr("pixelAspectRatio", "float", struct.pack("<f", 1)),
        attr("screenWindowCenter", "v2f", struct.pack("<ff", 0, 0)),
        attr("screenWindowWidth", "float", struct.pack("<f", 1)), b"\0"])
    chunks = []
    for y in range(0, H, 16):
        raw = np.frombuffer(depth[y:y + 16].tobytes(), np.uint8)
        half = (raw.size + 1) // 2
        t = np.concatenate([raw[0::2], raw[1::2]]).astype(np.int64)
        assert t.size == raw.size and half == raw[0::2].size
        d = np.concatenate([t[:1], (np.diff(t) + 128) % 256]).astype(np.uint8)
        comp = zlib.compress(d.tobytes())
        data = comp if len(comp) < raw.size else raw.tobytes()
        chunks.append(struct.pack("<ii", y, len(data)) + data)
    table_end = len(header) + 8 * len(chunks)
    offsets = np.cumsum([table_end] + [len(c) for c in chunks[:-1]]).astype("<u8")
    with open(path, "wb") as f:
        f.write(header + offsets.tobytes() + b"".join(chunks))
