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

from analysis.report import json_safe

# --------------------------------------------------------------------------------------------
FLOAT_DIGITS = 4  # significant digits of numbers in the inline JSON table
# --------------------------------------------------------------------------------------------

_CSS = """
body{font:13px sans-serif;margin:16px;color:#222}
table{border-collapse:collapse}td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}th:hover{background:#e0e0ff}
.card{border:1px solid #ccc;border-radius:4px;padding:8px;margin:12px 0}
.card img{max-width:100%;display:block;margin:4px 0}.num td{text-align:left}
#tablewrap{max-height:480px;overflow:auto;display:inline-block;border:1px solid #ccc}
.fig img{max-width:100%}code{background:#f3f3f3}
"""

_JS = """
const rows = JSON.parse(document.getElementById('latent-data').textContent);
const cols = Object.keys(rows[0] || {}).filter(c => c !== 'card');
let sortKey = 'latent', asc = true;
function cell(v){ if(v===null) return 'n/a';
  if(typeof v==='number') return Number.isInteger(v)?v:v.toPrecision(3); return v; }
function render(){
  const f = document.getElementById('filter').value;
  const data = rows.filter(r => !f || r.label === f);
  data.sort((a,b) => { const x=a[sortKey], y=b[sortKey];
    if(x===null) return 1; if(y===null) return -1; return (x<y?-1:x>y?1:0)*(asc?1:-1); });
  const head = '<tr>' + cols.map(c => '<th onclick="by(\\''+c+'\\')">' + c
      + (c===sortKey ? (asc ? ' ▲' : ' ▼') : '') + '</th>').join('') + '</tr>';
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


def write_browser(path, title, *, info, table, cards, figures=(), embed=False):
    """Write the browser to `path`.

    info: dict of run facts shown at the top (hook, pairs, correspondence source ...);
    table: dict column -> (S,) array, must contain 'latent' (and ideally 'label'): every latent
      gets a row; cards: dict latent -> dict(images=[(caption, png path)], numbers={name: value},
      files=[(caption, path)] for non-image downloads such as PLY); figures: [(caption, png path)].
    """
    html_dir = os.path.dirname(os.path.abspath(path))
    n = len(table["latent"])
    rows = [{c: json_safe(v[i], FLOAT_DIGITS) for c, v in table.items()} for i in range(n)]
    for r in rows:
        r["card"] = int(r["latent"] in cards)
    labels = sorted({r.get("label", "") for r in rows} - {""})
    data = json.dumps(rows, allow_nan=False).replace("</", "<\\/")  # keep '</script>' out of the JSON
    esc = html.escape
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
           f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
           "<table class='num'>" + "".join(f"<tr><td><b>{esc(str(k))}</b></td><td>{esc(_show(v))}</td></tr>"
                                           for k, v in info.items()) + "</table>"]
    for cap, p in figures:
        out.append(f"<div class='fig'><h3>{esc(cap)}</h3><img src='{_src(p, html_dir, embed)}' alt='{esc(cap)}'></div>")
    out.append("<h2>Latents</h2><p>Click a column header to sort; latents with a link have a card below. "
               "Filter by label: <select id='filter' onchange='render()'><option value=''>all</option>"
               + "".join(f"<option>{esc(lb)}</option>" for lb in labels)
               + "</select> <span id='count'></span></p><div id='tablewrap'><table id='index'></table></div>")
    for k in sorted(cards):
        c = cards[k]
        nums = "".join(f"<tr><td>{esc(str(a))}</td><td>{esc(_show(b))}</td></tr>"
                       for a, b in c.get("numbers", {}).items())
        imgs = "".join(f"<p>{esc(cap)}</p><img src='{_src(p, html_dir, embed)}' alt='{esc(cap)}'>"
                       for cap, p in c.get("images", []))
        files = "".join(f" <a href='{_src(p, html_dir, False)}'>{esc(cap)}</a>" for cap, p in c.get("files", []))
        out.append(f"<div class='card' id='latent-{int(k)}'><h3>latent {int(k)}</h3>"
                   f"<table class='num'>{nums}</table>{imgs}<p>{files}</p></div>")
    out.append(f"<script id='latent-data' type='application/json'>{data}</script><script>{_JS}</script></body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))
    return path
