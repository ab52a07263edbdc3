"""One self-contained HTML page of sections (a run's report, a study's): each section's id, title and body, the
headlines and what is missing gathered at the top, images inlined, nothing fetched."""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass, field
from typing import Any

from . import __version__


@dataclass
class Section:
    id: str
    title: str
    html: str = ""
    missing: list[str] = field(default_factory=list)
    """What this section would show but the run folder lacks, each as 'file: problem'."""
    headline: str = ""
    """One line for the summary at the top of the report, if the section has a headline figure."""
    plain: str = ""
    """A sentence without jargon that opens the report, if the section has one."""


def img(png: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img src="{src}" alt="{html.escape(alt)}"{w}>'


def table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f'<div class="wide"><table class="{cls}">{head}<tbody>{body}</tbody></table></div>'


def para(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def html_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """A whole page: title, navigation, the headlines, what is missing, then each section."""
    nav = " · ".join(f'<a href="#{s.id}">{html.escape(s.title.split(":")[0])}</a>' for s in sections)
    missing = [m for s in sections for m in s.missing]
    lines = "".join(f"<li>{html.escape(s.headline)}</li>" for s in sections if s.headline)
    plain = "".join(f'<p class="plain">{html.escape(s.plain)}</p>' for s in sections if s.plain)
    warn = f'<div class="summary" id="summary">{plain}<ul>{lines}</ul></div>' if lines or plain else ""
    if missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in missing)
        lacks = f"<b>This run folder lacks {len(missing)} piece(s):</b>"
        warn += f'<div class="missing" id="missing">{lacks}<ul>{items}</ul></div>'
    body = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>'
        + "".join(f'<p class="lack">missing: {html.escape(m)}</p>' for m in s.missing)
        + s.html
        + "</section>"
        for s in sections
    )
    made = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(subtitle)} · report made {made} by heritagelens {__version__}</p>
<nav>{nav}</nav>{warn}{body}
<div id="big" hidden></div><script>{ENLARGE}</script></body></html>
"""


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #eee;font-size:.95em}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
table.facts td{text-align:left}table.config td{text-align:left;font-family:ui-monospace,monospace}
.headline{font-size:1.15em}.plain{font-size:1.2em;font-weight:600;margin:.6em 0}
.summary{background:#eef5ff;border:1px solid #9cc0f0;padding:.2em 1em;margin:1em 0}
details summary{cursor:pointer;margin:.5em 0}
.missing{background:#fff4e5;border:1px solid #f0b35a;padding:.5em 1em;margin:1em 0}
.lack{color:#a15c00}
figure.thumb{display:inline-block;margin:4px;width:150px;vertical-align:top;font-size:.8em}
figure.thumb small{color:#777;word-break:break-all}
.nothumb{width:128px;height:128px;background:#eee;display:flex;align-items:center;justify-content:center}
img{max-width:100%;height:auto;cursor:zoom-in}
html{scroll-padding-top:4em}
.wide{overflow-x:auto;max-width:100%}
#big{position:fixed;inset:0;background:rgba(0,0,0,.85);display:flex;align-items:center;justify-content:center;
z-index:10;cursor:zoom-out}#big[hidden]{display:none}
#big img{width:96vw;height:96vh;object-fit:contain;image-rendering:pixelated}
"""
"""`scroll-padding-top` (set to the sticky nav's height by `ENLARGE`'s script) keeps a heading clear of the nav after a
jump; `.wide` lets a table scroll sideways on a
phone instead of widening the page; `#big` shows a clicked figure at the size of the window."""

ENLARGE = """const pad = () => {
  document.documentElement.style.scrollPaddingTop = document.querySelector("nav").offsetHeight + 8 + "px";
};
pad(); addEventListener("resize", pad);
document.addEventListener("click", (e) => {
  const big = document.getElementById("big");
  if (e.target.closest("#big")) { big.hidden = true; big.replaceChildren(); return; }
  if (e.target.tagName !== "IMG") return;
  const copy = e.target.cloneNode(); copy.removeAttribute("width"); big.replaceChildren(copy); big.hidden = false;
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") document.getElementById("big").hidden = true;
});"""
"""A jump clears the nav, however many lines it wraps to; click a figure to see it as large as the window, click again
or Esc to close."""
