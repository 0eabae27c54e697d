"""The page every report is: one HTML file that needs nothing at view time.

Everything from outside (questions, answers, remarks, names, paths) is data: it enters
the page only through :func:`esc`, so a remark holding ``<script>`` or
``<img onerror=...>`` shows as text. The page's Content-Security-Policy allows only its
own style and script (by their hashes) and ``data:`` images: were something to slip past
the escaping, a browser would still run no other script and fetch nothing.
"""

from __future__ import annotations

import base64
import hashlib
import html

from saie_lite.safe_text import visible


def esc(value: object) -> str:
    """``value`` as HTML text or attribute value: control characters written out (as in
    the terminal), then ``& < > " '`` escaped."""
    return html.escape(visible(value), quote=True)


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
color:#1d2430;background:#f5f6f8}
main{max-width:1120px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#5b6576;margin:0 0 12px}
section.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 16px;
margin:12px 0}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}
dl.facts dt{color:#5b6576}dl.facts dd{margin:0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{border-bottom:1px solid #e4e7ec;padding:5px 7px;text-align:left;vertical-align:top}
th{background:#f0f2f5}
pre{white-space:pre-wrap;word-break:break-word;margin:3px 0;font:12.5px/1.4 ui-monospace,
SFMono-Regular,Menlo,Consolas,monospace}
.warn{background:#fff4e0;border-color:#f0c36d}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.charts svg{width:100%;height:auto;background:#fff;border:1px solid #dde1e7;border-radius:8px}
form.filters{display:flex;flex-wrap:wrap;gap:10px;align-items:center;position:sticky;top:0;
background:#f5f6f8;padding:8px 0;z-index:1}
form.filters input[type=search]{min-width:260px}
form.filters input[type=number]{width:80px}
.item{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:10px 14px;margin:10px 0}
.item header{color:#5b6576;font-size:12.5px;margin-bottom:4px}
.label{font-weight:600;font-size:12.5px}
.mark{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:600}
.mark.right{background:#dcf5e3;color:#116b2e}.mark.wrong{background:#fde2e1;color:#9b1c1c}
.mark.unmarked{background:#eceef2;color:#4a5361}
.branch{border-left:4px solid #9aa3b2;padding:2px 0 2px 10px;margin:8px 0}
.branch.supportive{border-color:#2e9e57}.branch.adversarial{border-color:#d1493f}
.branch.rationale{border-color:#3b73c8}
.remark.supportive .label{color:#1f7a41}.remark.adversarial .label{color:#b23a31}
.remark.rationale .label{color:#2c5ea8}
.diag{color:#5b6576;font-size:12px}
.missing{color:#9b1c1c}
details summary{cursor:pointer;color:#3b73c8}
img.plot{max-width:100%;background:#fff;border:1px solid #dde1e7;border-radius:8px}
[hidden]{display:none!important}
"""

# The filters of a page's items: search text, mark (right/wrong), stance and a step range,
# each optional (an evaluation has no stances or steps). The state lives in the address
# (#mark=wrong&stance=adversarial), so a filtered view can be linked to.
SCRIPT = """
(function () {
  var form = document.getElementById('filters');
  if (!form) return;
  var items = Array.prototype.slice.call(document.querySelectorAll('.item'));
  var shown = document.getElementById('shown');
  var keys = ['q', 'mark', 'stance', 'from', 'to'];
  function val(k) { var el = form.elements[k]; return el ? el.value.trim() : ''; }
  function apply() {
    var q = val('q').toLowerCase(), mark = val('mark'), stance = val('stance');
    var lo = parseInt(val('from'), 10), hi = parseInt(val('to'), 10), n = 0;
    items.forEach(function (it) {
      var step = parseInt(it.getAttribute('data-step'), 10);
      var stances = ' ' + (it.getAttribute('data-stances') || '') + ' ';
      var ok = (!mark || it.getAttribute('data-mark') === mark) &&
        (!stance || stances.indexOf(' ' + stance + ' ') >= 0) &&
        (isNaN(lo) || step >= lo) && (isNaN(hi) || step <= hi) &&
        (!q || it.textContent.toLowerCase().indexOf(q) >= 0);
      it.hidden = !ok;
      if (ok) n++;
      it.querySelectorAll('.branch').forEach(function (b) {
        b.hidden = !!stance && b.getAttribute('data-stance') !== stance;
      });
    });
    shown.textContent = n + ' of ' + items.length + ' shown';
    var state = new URLSearchParams();
    keys.forEach(function (k) { if (val(k)) state.set(k, val(k)); });
    try {
      var s = state.toString();
      history.replaceState(null, '', s ? '#' + s : location.href.split('#')[0]);
    } catch (e) { /* some browsers refuse it for file: pages; the filter still works */ }
  }
  new URLSearchParams(location.hash.slice(1)).forEach(function (v, k) {
    if (keys.indexOf(k) >= 0 && form.elements[k]) form.elements[k].value = v;
  });
  form.addEventListener('input', apply);
  form.addEventListener('change', apply);
  form.addEventListener('submit', function (e) { e.preventDefault(); });
  apply();
})();
"""


def _hash(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def page(title: str, subtitle: str, body: str, with_script: bool = False) -> str:
    """The whole HTML file. ``title`` and ``subtitle`` are escaped here; ``body`` is HTML
    built with :func:`esc`."""
    script = f"<script>{SCRIPT}</script>" if with_script else ""
    scripts = _hash(SCRIPT) if with_script else "'none'"
    policy = (
        f"default-src 'none'; img-src data:; style-src {_hash(STYLE)}; script-src {scripts}; "
        "base-uri 'none'; form-action 'none'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="saie-lite report">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style></head>\n"
        f'<body><main>\n<h1>{esc(title)}</h1>\n<p class="sub">{esc(subtitle)}</p>\n'
        f"{body}\n</main>{script}</body></html>\n"
    )


def facts(rows: list[tuple[str, object]]) -> str:
    """A two-column list of (name, value), both escaped."""
    cells = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<dl class="facts">{cells}</dl>'


def block(label: str, text: object) -> str:
    """A labelled piece of outside text, kept as written (line breaks too)."""
    return f'<div><span class="label">{esc(label)}</span><pre>{esc(text)}</pre></div>'


def mark_badge(mark: str) -> str:
    """'right' | 'wrong' | 'unmarked' as a coloured badge."""
    return f'<span class="mark {esc(mark)}">{esc(mark)}</span>'


def mark_of(correct) -> str:
    """A stored mark (1, 0, or NULL where the data has no check) as a filter value."""
    return "unmarked" if correct is None else ("right" if correct else "wrong")


def filters(n: int, stances: list[str] = (), steps: bool = False, marks=("right", "wrong")) -> str:
    """The filter bar over ``n`` items (the script fills in how many are shown)."""

    def select(name: str, label: str, values) -> str:
        opts = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
        choose = f'<select name="{name}"><option value="">all</option>{opts}</select>'
        return f"<label>{esc(label)} {choose}</label>"

    parts = ['<input type="search" name="q" placeholder="search text" aria-label="search">']
    parts.append(select("mark", "answer", marks))
    if stances:
        parts.append(select("stance", "stance", stances))
    if steps:
        parts.append('<label>update <input type="number" name="from" min="0"></label>')
        parts.append('<label>to <input type="number" name="to" min="0"></label>')
    parts.append(f'<span id="shown">{n} of {n} shown</span>')
    return f'<form id="filters" class="filters">{"".join(parts)}</form>'
