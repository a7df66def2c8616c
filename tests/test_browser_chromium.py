"""The offline HTML browser (index.html) in a real headless Chromium: it loads with the network cut and no
console error, the index table sorts when a header is clicked and filters by label, and every card's
images are present. Skipped, with the reason, when no Chromium binary is installed (`.ci/run` installs
Debian's `chromium`)."""
import numpy as np
import pytest
from PIL import Image

from tests.chromium import check_page, find_chromium
from analysis import browser

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="no chromium/google-chrome binary on PATH "
                                "(apt-get install chromium); the browser is tested in a real browser only")

# JS run in the page after load: sort by a numeric column (two clicks), filter by the first label, count images
ACTIONS = """
const cells = (i) => [...document.querySelectorAll('#index tr')].slice(1).map(r => r.children[i].textContent);
const heads = () => [...document.querySelectorAll('#index th')];
const col = heads().findIndex(th => th.textContent.startsWith(COLUMN));
const num = (v) => v === 'n/a' ? null : Number(v);
heads()[col].click(); const first = cells(col).map(num);
heads()[col].click(); const second = cells(col).map(num);
const sel = document.getElementById('filter'); const label = sel.options[1].value;
sel.value = label; sel.dispatchEvent(new Event('change'));
const labelCol = heads().findIndex(th => th.textContent.startsWith(LABEL));
const filtered = cells(labelCol);
const imgs = [...document.querySelectorAll('.card img')];
const card = document.getElementById('latent-3');
return {heading: card.querySelector('h3').textContent, key: card.querySelector('.key').textContent,
        groups: [...card.querySelectorAll('details summary')].map(x => x.textContent),
        findings: [...document.querySelectorAll('#findings li')].map(x => x.textContent),
        headers: heads().map(th => th.textContent.replace(/ [▲▼]$/, '')), n_rows_sorted: first.length, first: first, second: second, label: label, filtered: filtered,
        count: document.getElementById('count').textContent, n_cards: document.querySelectorAll('.card').length,
        images: imgs.map(im => [im.getAttribute('src'), im.complete && im.naturalWidth > 0])};
"""


def actions(column, label_column):
    return f"const COLUMN = {column!r}; const LABEL = {label_column!r};" + ACTIONS


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A browser page of 40 latents, 3 labels, a NaN column value, 2 cards with 2 images each."""
    d = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(0)
    n = 40
    labels = np.array(["view-invariant", "view-specific", "not tested"])[rng.integers(0, 3, n)]
    freq = rng.random(n)
    freq[5] = np.nan
    table = {"latent": np.arange(n), "label": labels, "frequency": freq, "jaccard": rng.random(n)}
    cards = {}
    for k in (3, 17):
        imgs = []
        for name in ("heatmap", "examples"):
            path = d / "latents" / str(k) / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
            imgs.append((name, str(path)))
        cards[k] = dict(images=imgs, numbers={"label": labels[k], "frequency": freq[k], "jaccard": 0.61,
                                              "null_max": 0.2, "gain": 0.51, "va": 0.03, "q": 0.01, "mass1": 3.0,
                                              "null_shift": 0.1, "slot_specificity": 0.2, "a_new_metric": 7,
                                              "corr_depth": -0.3, "corr_depth_null": 0.01})
    fig = d / "figures" / "hist.png"
    fig.parent.mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(fig)
    findings = ["# Analysis", "", "- Alive latents: **30/40** (75.0 %).", "- Tested: `12`.", "", "Files: x."]
    path = browser.write_browser(d / "index.html", "test run", info={"hook": "enc_norm", "n_alive": 30}, table=table,
                                 cards=cards, figures=[("histograms", str(fig))], findings=findings)
    return path, table


def test_page_loads_offline_without_console_errors(page):
    path, _ = page
    result, errors, console = check_page(path, actions("firing frequency", "label"))
    assert errors == [] and console == [], (errors, console)
    assert result["n_cards"] == 2


def test_index_sorts_by_clicked_column(page):
    path, table = page
    result, _, _ = check_page(path, actions("firing frequency", "label"))
    finite = np.sort(table["frequency"][np.isfinite(table["frequency"])])
    first, second = result["first"], result["second"]
    assert len(first) == len(table["latent"]) and first[-1] is None and second[-1] is None  # n/a sorts last
    np.testing.assert_allclose([v for v in first if v is not None], finite[::-1], rtol=5e-3)  # 3 digits shown; high first
    np.testing.assert_allclose([v for v in second if v is not None], finite, rtol=5e-3)


def test_index_filters_by_label_and_cards_have_images(page):
    path, table = page
    result, _, _ = check_page(path, actions("firing frequency", "label"))
    n_label = int((table["label"] == result["label"]).sum())
    assert result["filtered"] == [result["label"]] * n_label and result["count"].startswith(f"{n_label} ")
    assert len(result["images"]) == 4 and all(ok for _, ok in result["images"]), result["images"]


def test_harness_sees_a_broken_image_and_a_script_error(tmp_path):
    """The checks above could fail: a missing picture and a throwing script are reported."""
    (tmp_path / "bad.html").write_text("<!DOCTYPE html><html><head></head><body><img src='missing.png'>"
                                       "<script>undefinedFunction()</script></body></html>")
    _, errors, _ = check_page(tmp_path / "bad.html", "return 1;")
    assert any("missing.png" in e for e in errors) and any("undefinedFunction" in e for e in errors), errors


def test_page_reads_like_a_report(page):
    """Findings as sentences first; readable column names; each card headed by its label and key numbers, the
    rest grouped (activity, consistency and its nulls, asymmetry and its controls, other)."""
    path, table = page
    result, _, _ = check_page(path, actions("firing frequency", "label"))
    assert result["findings"] == ["Alive latents: 30/40 (75.0 %).", "Tested: 12."]
    assert result["headers"] == ["latent", "label", "firing frequency", "consistency C"]
    assert result["heading"] == f"latent 3 · {table['label'][3]}"
    assert result["key"].startswith(f"firing frequency {browser._show(table['frequency'][3])}")
    assert "consistency C 0.61 (strongest null 0.2)" in result["key"] and "view asymmetry VA 0.03" in result["key"]
    assert result["groups"] == ["consistency and its nulls (3)", "asymmetry and its controls (2)",
                                "3D attributes and causal effect (2)", "other (1)"]
