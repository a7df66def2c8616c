"""analysis/browser.py: every latent listed, NaN as null, nothing fetched, pictures linked or embedded."""
import json
import os
import re

import numpy as np

from analysis import browser, figures


def test_browser_lists_every_latent_and_is_offline(tmp_path):
    S = 25
    img = tmp_path / "latents" / "3" / "heat.png"
    img.parent.mkdir(parents=True)
    figures.save_png(np.zeros((8, 8, 3), np.uint8), img)
    table = dict(latent=np.arange(S), label=np.array(["neither"] * S, dtype=object),
                 frequency=np.linspace(0, 1, S), jaccard=np.full(S, np.nan), va=np.zeros(S))
    cards = {3: dict(images=[("heatmap", str(img))], numbers=dict(jaccard=0.5, q=np.nan),
                     files=[("PLY", str(img.parent / "latent.ply"))])}
    for embed in (False, True):
        out = browser.write_browser(str(tmp_path / "index.html"), "run <x>", info=dict(hook="enc_blocks.11", pairs=8),
                                    table=table, cards=cards, figures=[("hist", str(img))], embed=embed)
        text = open(out, encoding="utf-8").read()
        rows = json.loads(re.search(r"id='latent-data' type='application/json'>(.*?)</script>", text, re.S).group(1))
        assert [r["latent"] for r in rows] == list(range(S)) and rows[3]["card"] == 1
        assert rows[0]["jaccard"] is None  # NaN -> null, the JSON stays valid
        assert "id='latent-3'" in text and "run &lt;x&gt;" in text
        refs = re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]*)['\"]", text)
        assert refs and not [r for r in refs if re.match(r"(https?:)?//", r)]
        assert "http://" not in text and "https://" not in text
        if embed:
            assert "src='data:image/png;base64," in text
        else:
            assert "src='latents/3/heat.png'" in text and os.path.exists(tmp_path / "latents/3/heat.png")
