"""Self-contained HTML latent browser: one index.html, no server, no remote resource.

Layout (what SAE-vision browsers show): summary figures on top, an index table of every latent
(built in the page from inline JSON, sortable by clicking a column header, filterable by label),
then one card per visualised latent with its pictures and numbers. Pictures are either relative
local files (default: the HTML stays small and opens from the run folder) or embedded as base64
data URIs (embed=True: a single file to mail around). CSS and JS are inline; nothing is fetched.
"""
import base64
import html
import json
import os
import re

from analysis.report import json_safe

# --------------------------------------------------------------------------------------------
FLOAT_DIGITS = 4  # significant digits of numbers in the inline JSON table
# per-latent metrics: key -> (group, name shown, one-line explanation); definitions: analysis/multiview.py and
# README.md, section "How to read the metrics". Keys not listed here are shown under "other" by their key.
GROUPS = ("activity", "consistency and its nulls", "asymmetry and its controls", "3D attributes and causal effect",
          "other")
_3D = "3D attributes and causal effect"  # analysis/attributes.py, analysis/causal.py
METRICS = {
    "latent": ("", "latent", "index of the SAE latent"),
    "label": ("", "label", "consistent (significant), view-1/view-2 (asymmetric), branch-1/2 (follows the slot), "
                           "neither, dead"),
    "frequency": ("activity", "firing frequency", "share of tokens (both views) on which the latent is non-zero"),
    "mean_activation": ("activity", "mean activation", "its mean value where it fires"),
    "positional": ("activity", "positional concentration",
                   "1 - entropy of its mass over grid positions / log N: 1 = always the same patch"),
    "jaccard": ("consistency and its nulls", "consistency C", "weighted Jaccard of its activations at the two ends "
                "of every matched patch: 1 = the same activation on the same 3D point in both views"),
    "gain": ("consistency and its nulls", "gain G over the nulls",
             "(C - strongest null) / (1 - strongest null): 0 = no better than the best null, 1 = perfect"),
    "q": ("consistency and its nulls", "q (FDR)", "Benjamini-Hochberg adjusted p over the tested latents; "
          "significant when q <= 0.05 and G > 0"),
    "p": ("consistency and its nulls", "p", "permutation p-value against the shuffle null (tail fit below 10 draws)"),
    "p_empirical": ("consistency and its nulls", "p (empirical)", "(1 + draws with C >= observed) / (1 + draws)"),
    "pearson": ("consistency and its nulls", "Pearson r", "correlation of the activations over matched patches"),
    "transfer": ("consistency and its nulls", "transfer rate",
                 "P(fires at the matched patch | fires at the patch), symmetrised"),
    "support1": ("consistency and its nulls", "support, view 1", "matched view-1 patches where it fires"),
    "support2": ("consistency and its nulls", "support, view 2", "matched view-2 patches where it fires"),
    "null_shuffle": ("consistency and its nulls", "null: shuffled matches", "mean C with matches permuted in a pair"),
    "null_shuffle_q95": ("consistency and its nulls", "null: shuffled, 95th pct.", "95th percentile of those draws"),
    "null_position": ("consistency and its nulls", "null: same position", "C with each patch matched to the same "
                      "grid position (catches positional latents)"),
    "null_shift": ("consistency and its nulls", "null: shifted", "C with matches moved by >= 3 patches"),
    "null_scene": ("consistency and its nulls", "null: other scene", "C against another scene's view 2"),
    "null_max": ("consistency and its nulls", "strongest null", "the largest of the four nulls"),
    "va": ("asymmetry and its controls", "view asymmetry VA",
           "(M1 - M2) / (M1 + M2) of its activation mass: +1 = view 1 only, -1 = view 2 only"),
    "va_lo": ("asymmetry and its controls", "VA, 95% CI low", "bootstrap over pairs"),
    "va_hi": ("asymmetry and its controls", "VA, 95% CI high", "bootstrap over pairs"),
    "exclusivity": ("asymmetry and its controls", "exclusivity",
                    "share of the pairs it fires in where it fires in one view only"),
    "mass1": ("asymmetry and its controls", "mass, view 1", "sum of its activations in view 1"),
    "mass2": ("asymmetry and its controls", "mass, view 2", "sum of its activations in view 2"),
    "slot_specificity": ("asymmetry and its controls", "slot specificity S", "control: each pair also run as "
                         "(B, A); |S| near 1 = it follows the slot (branch), not the image"),
    "content_following": ("asymmetry and its controls", "content following F",
                          "control: near 1 = it follows the image across slots"),
    "va_identical": ("asymmetry and its controls", "VA on (A, A)", "control: the same image in both slots; what "
                     "remains is role, not content"),
    "jaccard_identical": ("asymmetry and its controls", "C on (A, A)",
                          "anchor: 1 for encoder hooks (each view is encoded alone)"),
    "corr_depth": (_3D, "r with depth", "correlation of its activation with log relative depth (< 0: near surfaces)"),
    "corr_normal_x": (_3D, "r with normal x", "correlation with the surface normal's x (camera frame, x right)"),
    "corr_normal_y": (_3D, "r with normal y", "correlation with the normal's y (y down: floors face -y)"),
    "corr_normal_z": (_3D, "r with normal z", "correlation with the normal's z (z forward: walls head-on face -z)"),
    "corr_edge": (_3D, "r with edge distance", "correlation with log(1 + distance to the nearest depth edge)"),
    "planar_share": (_3D, "planar share", "share of its activation mass on planar patches"),
    "causal_mean_disp": (_3D, "causal: mean 3D change", "mean |change of the points| when the latent is scaled on "
                         "its top pair"),
    "causal_mean_disp_firing": (_3D, "causal: change where it fires", "the same over the patches where it fires"),
    "causal_mean_disp_silent": (_3D, "causal: change where silent", "the same over the patches where it is silent"),
    "causal_dconf_view1": (_3D, "causal: confidence change, view 1", "mean change of view 1's confidence"),
    "causal_dconf_view2": (_3D, "causal: confidence change, view 2", "mean change of view 2's confidence"),
    "causal_control_mean_disp": (_3D, "control: mean 3D change", "the same edit along a random direction"),
    "causal_control_dconf_view1": (_3D, "control: confidence change, view 1", "random direction"),
    "causal_control_dconf_view2": (_3D, "control: confidence change, view 2", "random direction"),
}
KEY_NUMBERS = ("frequency", "jaccard", "gain", "va")  # the card's header line, with the strongest null beside C
# layer numbers (multiview.layer_summary and the run facts) -> name shown
LAYER_NAMES = {
    "hook": "hook point", "pairs": "pairs analysed", "correspondences": "correspondences", "n_latents": "latents",
    "n_alive": "alive latents (fire at least once)", "n_pairs": "pairs", "n_matched": "matched view-1 patches",
    "n_tested": "tested latents (enough matched support)", "n_significant": "significantly consistent latents",
    "frac_significant_of_alive": "share of alive latents significantly consistent",
    "frac_significant_of_tested": "share of tested latents significantly consistent",
    "mass_weighted_gain": "mass-weighted gain G (tested latents)", "median_jaccard": "median consistency C (tested)",
    "median_null_max": "median strongest null (tested)", "mass_weighted_abs_va": "mass-weighted |VA|",
    "frac_asymmetric": "share of alive latents with |VA| >= 0.5", "median_frequency": "median firing frequency (alive)",
    "frac_positional_gt_0p5": "share of alive latents with positional concentration > 0.5",
    "mass_weighted_abs_slot_specificity": "mass-weighted |slot specificity S| (control)",
    "mass_weighted_content_following": "mass-weighted content following F (control)",
    "mass_weighted_abs_va_identical_pair": "mass-weighted |VA| on (A, A) pairs (control)",
}
# --------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 sans-serif;margin:16px auto;max-width:1200px;color:#222}
.findings li{margin:3px 0}.key{font-size:15px;margin:4px 0 8px}.key b{margin-right:14px}
details{margin:4px 0}summary{cursor:pointer;color:#335}.expl{color:#666;text-align:left!important}
table{border-collapse:collapse}td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}th:hover{background:#e0e0ff}
.card{border:1px solid #ccc;border-radius:4px;padding:8px;margin:12px 0}
.card img{max-width:100%;display:block;margin:4px 0}.num td{text-align:left}
#tablewrap{max-height:480px;overflow:auto;display:inline-block;border:1px solid #ccc}
.fig img{max-width:100%}code{background:#f3f3f3}
"""

_JS = """
const rows = JSON.parse(document.getElementById('latent-data').textContent);
const names = JSON.parse(document.getElementById('column-names').textContent);
const cols = Object.keys(rows[0] || {}).filter(c => c !== 'card');
let sortKey = 'latent', asc = true;
function cell(v){ if(v===null) return 'n/a';
  if(typeof v==='number') return Number.isInteger(v)?v:v.toPrecision(3); return v; }
function render(){
  const f = document.getElementById('filter').value;
  const data = rows.filter(r => !f || r.label === f);
  data.sort((a,b) => { const x=a[sortKey], y=b[sortKey];
    if(x===null) return 1; if(y===null) return -1; return (x<y?-1:x>y?1:0)*(asc?1:-1); });
  const head = '<tr>' + cols.map(c => '<th title="' + (names[c] ? names[c][1] : '') + '" onclick="by(\\''+c+'\\')">'
      + (names[c] ? names[c][0] : c) + (c===sortKey ? (asc ? ' ▲' : ' ▼') : '') + '</th>').join('') + '</tr>';
  const body = data.map(r => '<tr>' + cols.map(c => c==='latent' && r.card
      ? '<td><a href="#latent-'+r.latent+'">'+r.latent+'</a></td>'
      : '<td>'+cell(r[c])+'</td>').join('') + '</tr>').join('');
  document.getElementById('index').innerHTML = head + body;
  document.getElementById('count').textContent = data.length + ' latents shown';
}
function by(c){ if(sortKey===c) asc=!asc; else { sortKey=c; asc=(c==='latent'||c==='label'); } render(); }
render();
"""


def _show(v):
    """Number or text for a card / the info table; NaN shows as n/a, a flag as 1 / 0."""
    v = json_safe(v, FLOAT_DIGITS)
    return "n/a" if v is None else str(int(v) if isinstance(v, bool) else v)


def _src(path, html_dir, embed):
    """Image source: a relative path, or a base64 data URI when embedding."""
    if not embed:
        return html.escape(os.path.relpath(path, html_dir).replace(os.sep, "/"))
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _metric(key):
    """(group, name, explanation) of a column; '<metric>_null' (3D attributes) is the metric's own null."""
    if key in METRICS:
        return METRICS[key]
    if key.endswith("_null") and key[:-5] in METRICS:
        group, name, _ = METRICS[key[:-5]]
        return group, f"{name}, null", "the same against the next pair's geometry (the link broken, the maps kept)"
    return "other", key, ""


def _name(key):
    return _metric(key)[1]


def _sentence(line):
    """One line of summary.md as HTML: **bold**, `code`; '- ' bullets and '#' headings are handled by the caller."""
    out = html.escape(line)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _findings(lines):
    """summary.md's lines (headings, bullets, paragraphs) -> HTML: the findings in sentences, with their numbers."""
    out, in_list = [], False
    for line in lines:
        bullet = line.startswith("- ")
        if in_list and not bullet:
            out.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 5)  # under the page's h2 "Findings"
            out.append(f"<h{level}>{_sentence(line.lstrip('#').strip())}</h{level}>")
        elif bullet:
            out.append(("" if in_list else "<ul class='findings'>") + f"<li>{_sentence(line[2:])}</li>")
            in_list = True
        elif line.strip():
            out.append(f"<p>{_sentence(line)}</p>")
    return "\n".join(out + (["</ul>"] if in_list else []))


def _card(k, card, html_dir, embed):
    """One latent: label and key numbers on top, pictures, then the rest grouped, one line per metric."""
    esc, nums = html.escape, card.get("numbers", {})
    label = nums.get("label", "")
    key = []
    for m in KEY_NUMBERS:
        if m in nums:
            extra = f" (strongest null {_show(nums['null_max'])})" if m == "jaccard" and "null_max" in nums else ""
            key.append(f"<b title='{esc(METRICS[m][2])}'>{esc(METRICS[m][1])} {esc(_show(nums[m]))}{esc(extra)}</b>")
    groups = {g: [] for g in GROUPS}
    for m, v in nums.items():
        if m in ("label", "latent") or m in KEY_NUMBERS:
            continue
        group, name, expl = _metric(m)
        groups[group].append(f"<tr><td>{esc(name)}</td><td>{esc(_show(v))}</td><td class='expl'>{esc(expl)}</td></tr>")
    details = "".join(f"<details><summary>{esc(g)} ({len(r)})</summary><table class='num'>{''.join(r)}</table>"
                      f"</details>" for g, r in groups.items() if r)
    imgs = "".join(f"<p>{esc(cap)}</p><img src='{_src(p, html_dir, embed)}' alt='{esc(cap)}'>"
                   for cap, p in card.get("images", []))
    files = "".join(f" <a href='{_src(p, html_dir, False)}'>{esc(cap)}</a>" for cap, p in card.get("files", []))
    head = f"latent {int(k)}" + (f" · {esc(str(label))}" if label != "" else "")
    return (f"<div class='card' id='latent-{int(k)}'><h3>{head}</h3><div class='key'>{''.join(key)}</div>"
            f"{imgs}<p>{files}</p>{details}</div>")


def write_browser(path, title, *, info, table, cards, figures=(), embed=False, findings=()):
    """Write the browser to `path`: a report that reads top to bottom.

    info: dict of run facts and layer numbers (hook, pairs, correspondences, multiview.layer_summary keys), shown
      with readable names in a collapsed table; findings: the summary's lines (summary.md: '#' headings, '- '
      bullets, **bold**, `code`), shown as the page's first section; table: dict column -> (S,) array, must contain
      'latent' (and ideally 'label'): every latent gets a row, columns titled by METRICS; cards: dict latent ->
      dict(images=[(caption, png path)], numbers={metric: value}, files=[(caption, path)] for non-image downloads
      such as PLY): headed by the label and KEY_NUMBERS, the other numbers grouped by GROUPS with one line of
      explanation each; figures: [(caption, png path)].
    """
    html_dir = os.path.dirname(os.path.abspath(path))
    n = len(table["latent"])
    rows = [{c: json_safe(v[i], FLOAT_DIGITS) for c, v in table.items()} for i in range(n)]
    for r in rows:
        r["card"] = int(r["latent"] in cards)
    labels = sorted({r.get("label", "") for r in rows} - {""})
    data = json.dumps(rows, allow_nan=False).replace("</", "<\\/")  # keep '</script>' out of the JSON
    names = {c: [html.escape(_name(c)), html.escape(_metric(c)[2])] for c in table}
    esc = html.escape
    facts = "".join(f"<tr><td>{esc(LAYER_NAMES.get(k, k))}</td><td>{esc(_show(v))}</td></tr>" for k, v in info.items())
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
           f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"]
    if findings:
        out.append("<section id='findings'><h2>Findings</h2>" + _findings(findings) + "</section>")
    out.append(f"<details id='facts'><summary>All layer numbers ({len(info)})</summary><table class='num'>{facts}"
               f"</table></details>")
    for cap, p in figures:
        out.append(f"<div class='fig'><h3>{esc(cap)}</h3><img src='{_src(p, html_dir, embed)}' alt='{esc(cap)}'></div>")
    legend = "".join(f"<tr><td>{esc(_name(c))}</td><td class='expl'>{esc(_metric(c)[2])}</td></tr>"
                     for c in table if _metric(c)[2])
    out.append("<h2>Latents</h2><p>Click a column header to sort (hover it for its meaning); latents with a link "
               "have a card below. Filter by label: <select id='filter' onchange='render()'><option value=''>all"
               "</option>" + "".join(f"<option>{esc(lb)}</option>" for lb in labels)
               + "</select> <span id='count'></span></p><div id='tablewrap'><table id='index'></table></div>"
               f"<details><summary>What the columns mean</summary><table class='num'>{legend}</table></details>")
    out.append("<h2>Pictured latents</h2>")
    out += [_card(k, cards[k], html_dir, embed) for k in sorted(cards)]
    out.append(f"<script id='latent-data' type='application/json'>{data}</script>"
               f"<script id='column-names' type='application/json'>{json.dumps(names)}</script>"
               f"<script>{_JS}</script></body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return path
