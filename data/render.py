"""Numpy ray caster for the built-in scenes (data/scenes.py): exact depth, textured, Lambert-shaded.

Scene descriptions come from `scenes.make_scene`: an axis-aligned room seen from inside, yawed boxes
and spheres. Rays are traced in row blocks of ~16k (numpy temporaries stay in cache) and each object
is only tested against the pixels inside its projected bounding rectangle. Textures are the photos
scikit-image ships in its wheel, read from its package folder (never through its pooch downloader),
with a procedural checker (and a warning) if one is missing.
Letters: N rays in a block, M rays hitting one object; arrays of rays are component-major (3, N).
"""
import functools
import os
import warnings
import zlib

import numpy as np
import PIL.Image

WALL_TEXTURES = ("brick.png", "gravel.png", "grass.png", "moon.png", "camera.png", "coins.png")
OBJECT_TEXTURES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg",
                   "color.png", "retina.jpg", "text.png", "page.png", "chessboard_RGB.png")


@functools.lru_cache(maxsize=None)
def texture(name):
    """float32 (S, S, 3) in [0, 1] from scikit-image's bundled data folder, or a procedural checker."""
    try:
        import skimage.data
        path = os.path.join(os.path.dirname(skimage.data.__file__), name)
        with PIL.Image.open(path) as im:
            img = im.convert("RGB").resize((128, 128), PIL.Image.BILINEAR)
        return np.asarray(img, np.float32) / 255
    except (ImportError, OSError) as err:
        warnings.warn(f"built-in scenes: texture {name} not found in scikit-image ({err}); using a checker")
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        yy, xx = np.mgrid[0:128, 0:128]
        check = ((yy // 16 + xx // 16) % 2)[..., None].astype(np.float32)
        return (0.3 + 0.5 * check * rng.uniform(0.3, 1, 3) + 0.2 * rng.uniform(0, 1, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _atlas():
    # all textures stacked and flattened: (T * n * n, 3), so one gather samples every surface
    return np.concatenate([texture(name).reshape(-1, 3) for name in WALL_TEXTURES + OBJECT_TEXTURES])


def _sample(tex_id, s, t, n=128):
    # bilinear, tiled lookup in texture tex_id (per pixel) at continuous texel coords s (x), t (y)
    flat, base = _atlas(), tex_id * (n * n)
    s0, t0 = np.floor(s), np.floor(t)
    fs, ft = (s - s0)[:, None], (t - t0)[:, None]
    i0, j0 = s0.astype(np.int64) & (n - 1), t0.astype(np.int64) & (n - 1)  # n is a power of 2
    i1, j1 = (i0 + 1) & (n - 1), (j0 + 1) & (n - 1)
    j0, j1 = base + j0 * n, base + j1 * n
    top = flat.take(j0 + i0, 0) * (1 - fs) + flat.take(j0 + i1, 0) * fs
    bottom = flat.take(j1 + i0, 0) * (1 - fs) + flat.take(j1 + i1, 0) * fs
    return top * (1 - ft) + bottom * ft


def _yaw(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)


def _screen_rect(corners, pose, K, W, H):
    # pixel rectangle (u0, u1, v0, v1) holding the projection of a convex object's 3D corners
    # (the whole image if a corner is behind the camera): culling makes objects cost their area
    Xc = (corners - pose[:3, 3]) @ pose[:3, :3]  # (8, 3) camera frame
    if np.any(Xc[:, 2] <= 1e-3):
        return 0, W, 0, H
    u = K[0, 0] * Xc[:, 0] / Xc[:, 2] + K[0, 2]
    v = K[1, 1] * Xc[:, 1] / Xc[:, 2] + K[1, 2]
    return (max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, W),
            max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, H))


def _rect_rays(rect, W, r0, r1):
    # flat indices, within the row block [r0, r1), of the pixels inside rect
    u0, u1, v0, v1 = rect
    v0, v1 = max(v0, r0), min(v1, r1)
    if u0 >= u1 or v0 >= v1:
        return np.zeros(0, np.int64)
    return ((np.arange(v0, v1) - r0)[:, None] * W + np.arange(u0, u1)[None, :]).ravel()


def render(scene, cam_index, size):
    """Ray-cast one view at native size (W, H) -> (uint8 image (H, W, 3), depth (H, W), K, pose)."""
    cam = scene["cams"][cam_index]
    W, H = (size[1], size[0]) if cam["portrait"] else size
    f = 0.5 * max(W, H) / np.tan(0.5 * cam["hfov"])
    K = np.array([[f, 0, (W - 1) / 2 + cam["pp_jitter"][0]], [0, f, (H - 1) / 2 + cam["pp_jitter"][1]],
                  [0, 0, 1]])
    cube = np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T  # (8, 3) corners of [-1, 1]^3
    rects = [_screen_rect(b["centre"] + (cube * b["half"]) @ _yaw(-b["yaw"]), cam["pose"], K, W, H)
             for b in scene["boxes"]]
    rects += [_screen_rect(sp["centre"] + sp["radius"] * cube, cam["pose"], K, W, H) for sp in scene["spheres"]]
    img, depth = np.empty((H, W, 3), np.uint8), np.empty((H, W), np.float32)
    step = max(1, 16384 // W)  # row blocks of ~16k rays keep numpy's temporaries in cache
    for r0 in range(0, H, step):
        r1 = min(r0 + step, H)
        img[r0:r1], depth[r0:r1] = _trace(scene, cam, K, W, r0, r1, rects)
    return img, depth, K, cam["pose"]


def _trace(scene, cam, K, W, r0, r1, rects):
    """Rays of pixel rows [r0, r1) -> (uint8 (r1 - r0, W, 3), depth (r1 - r0, W))."""
    f = K[0, 0]
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(r0, r1, dtype=np.float32))
    d_cam = np.stack([(u.ravel() - K[0, 2]) / f, (v.ravel() - K[1, 2]) / f, np.ones(u.size)]).astype(np.float32)
    R, o = cam["pose"][:3, :3].astype(np.float32), cam["pose"][:3, 3].astype(np.float32)
    d = R @ d_cam  # (3, N) world directions, component-major for fast numpy; length along d = depth
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = (x.astype(np.float32)[:, None] for x in scene["room"])
        t_far = np.where(d > 0, hi - o[:, None], lo - o[:, None]) / d  # (3, N): room seen from inside
        prim = np.where(t_far[0] < t_far[1], 0, 1)  # 0..2: the wall axis hit first
        best_t = np.minimum(t_far[0], t_far[1])
        prim, best_t = np.where(t_far[2] < best_t, 2, prim), np.minimum(best_t, t_far[2])
        for k, b in enumerate(scene["boxes"]):
            Rz = _yaw(-b["yaw"])
            idx = _rect_rays(rects[k], W, r0, r1)  # only rays that can hit the box
            ol, dl = Rz @ (o - b["centre"]).astype(np.float32), Rz @ d[:, idx]
            hb = b["half"].astype(np.float32)[:, None]
            t1, t2 = (-hb - ol[:, None]) / dl, (hb - ol[:, None]) / dl
            tn, tx = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin = np.maximum(np.maximum(tn[0], tn[1]), tn[2])
            tmax = np.minimum(np.minimum(tx[0], tx[1]), tx[2])
            hit = (tmin <= tmax) & (tmin > 1e-6) & (tmin < best_t[idx])
            best_t[idx], prim[idx] = np.where(hit, tmin, best_t[idx]), np.where(hit, 3 + k, prim[idx])
        for k, s in enumerate(scene["spheres"]):
            idx = _rect_rays(rects[len(scene["boxes"]) + k], W, r0, r1)
            oc, ds = (o - s["centre"]).astype(np.float32), d[:, idx]
            a, bq, cq = (ds * ds).sum(0), oc @ ds, oc @ oc - s["radius"] ** 2
            disc = bq * bq - a * cq
            t = (-bq - np.sqrt(np.maximum(disc, 0))) / a
            hit = (disc > 0) & (t > 1e-6) & (t < best_t[idx])
            best_t[idx] = np.where(hit, t, best_t[idx])
            prim[idx] = np.where(hit, 3 + len(scene["boxes"]) + k, prim[idx])
    X = o[:, None] + d * best_t  # (3, N) world hit points
    # per pixel: surface id (6 room faces, then boxes, then spheres), texel coords, Lambert shade
    N, n = W * (r1 - r0), 128
    surf, tex_s, tex_t = np.empty(N, np.int64), np.empty(N, np.float32), np.empty(N, np.float32)
    shade, light = np.empty(N, np.float32), scene["light"].astype(np.float32)
    n_tex = 48.0  # texels per metre on room surfaces
    for axis in range(3):  # room faces: -x +x -y +y floor ceiling, each a tiled texture
        m = np.flatnonzero(prim == axis)
        a1, a2 = [(1, 2), (0, 2), (0, 1)][axis]
        surf[m] = 2 * axis + (d[axis, m] > 0)
        tex_s[m], tex_t[m] = X[a1, m] * n_tex, X[a2, m] * n_tex
        shade[m] = abs(light[axis])  # |normal . light|, two-sided so no face is black
    for k, b in enumerate(scene["boxes"]):
        m = np.flatnonzero(prim == 3 + k)
        Rz = _yaw(-b["yaw"])
        q = (Rz @ (X[:, m] - b["centre"][:, None])) / b["half"][:, None]  # (3, M) local, in [-1, 1]
        axis = np.abs(q).argmax(0)  # which face: its normal is +-Rz^T e_axis
        surf[m] = 6 + k
        tex_s[m] = (np.where(axis == 0, q[1], q[0]) + 1) * 0.5 * (n - 1)
        tex_t[m] = (1 - np.where(axis == 2, q[1], q[2])) * 0.5 * (n - 1)
        shade[m] = np.abs(Rz @ light)[axis]
    for k, sp in enumerate(scene["spheres"]):
        m = np.flatnonzero(prim == 3 + len(scene["boxes"]) + k)
        nrm = (X[:, m] - sp["centre"][:, None]) / sp["radius"]  # (3, M) unit normals
        surf[m] = 6 + len(scene["boxes"]) + k
        tex_s[m] = (np.arctan2(nrm[1], nrm[0]) / np.pi + 1) * n
        tex_t[m] = (0.5 - np.arcsin(np.clip(nrm[2], -1, 1)) / np.pi) * n
        shade[m] = np.abs(light @ nrm)
    names = WALL_TEXTURES + OBJECT_TEXTURES
    objects = scene["boxes"] + scene["spheres"]
    tex_of = np.array([names.index(t) for t in scene["walls"]] + [names.index(o["tex"]) for o in objects])
    tint = np.concatenate([scene["tints"], np.array([o["tint"] for o in objects]).reshape(-1, 3)])  # (S, 3)
    tint = tint.astype(np.float32)
    rgb = _sample(tex_of[surf], tex_s, tex_t) * tint[surf]  # (N, 3) in [0, 1]
    light_factor = (0.45 * 255) + (0.55 * 255) * shade
    img = np.clip(rgb * light_factor[:, None] + 0.5, 0, 255).astype(np.uint8).reshape(r1 - r0, W, 3)
    return img, best_t.reshape(r1 - r0, W)
