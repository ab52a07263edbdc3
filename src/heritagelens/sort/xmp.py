"""XMP sidecars: a photo's class as a keyword where photo managers (digiKam, Lightroom, darktable, Tropy) read it.

Beside `IMG_0001.jpg` the sidecar is `IMG_0001.jpg.xmp` (digiKam's and darktable's naming; two photos that differ only
in extension keep two sidecars), or `IMG_0001.xmp` when that one exists already (Lightroom's). The photo itself is
never opened for writing.

A filed photo carries its class in `dc:subject` and as `HeritageLens|<class>` in `lr:hierarchicalSubject`; a photo
the model was unsure of carries `to review` and `HeritageLens|to review` instead, so that a photo manager gathers what
waits for a person. Every photo carries the model's class, calibrated probability, the model's name and who decided
its class (`heritagelens:decidedBy`: 'model', or 'person' once filed on the Review tab) in the `heritagelens:`
namespace. A sidecar that exists is merged: every other element,
attribute and keyword stays as it was, and a later run replaces only what an earlier one added (the keywords it
added are listed in `heritagelens:keywordsAdded`, so a keyword the person had typed is never taken away).
"""

from __future__ import annotations

import dataclasses
import io
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data.classes import UNSURE_FOLDER
from ..errors import HeritageLensError
from ..files import SpecialFileError, atomic_write_bytes, read_regular

X, RDF = "adobe:ns:meta/", "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC, LR = "http://purl.org/dc/elements/1.1/", "http://ns.adobe.com/lightroom/1.0/"
HL = "http://ns.heritagelens.org/1.0/"
PREFIXES = {"x": X, "rdf": RDF, "dc": DC, "lr": LR, "heritagelens": HL}
HIERARCHY = "HeritageLens|"
TO_REVIEW = "to review"
"""The keyword of a photo the model was unsure of (as `HeritageLens|to review` in the hierarchy)."""
PACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n', '\n<?xpacket end="w"?>\n')


class XmpError(HeritageLensError):
    """A sidecar that cannot be read as XMP (left as it is) or written; the message names it."""


@dataclass(frozen=True)
class Tag:
    """What a sidecar says of a photo: the class if filed (None when a person must decide), the model's top class
    and its calibrated probability, which model said so, and who filed it ('model' or 'person')."""

    filed: str | None
    top: str
    probability: float
    model: str
    decided_by: str = "model"


def sidecar_path(photo: Path, shared: bool | None = None) -> Path:
    """`photo.jpg.xmp`, or `photo.xmp` when only that one exists and no other photo beside it has the same stem
    (`pair.jpg` and `pair.png` beside one `pair.xmp`: which one it describes is unclear, so each gets its own full
    name and `pair.xmp` is left as it is). `shared` says whether such a sibling exists, when the caller knows."""
    full, short = photo.with_name(photo.name + ".xmp"), photo.with_suffix(".xmp")
    if full.exists() or not short.exists():
        return full
    if shared is None:
        siblings = photo.parent.glob(glob_escape(photo.stem) + ".*")
        shared = any(p != photo and p.suffix.lower() != ".xmp" for p in siblings)
    return full if shared else short


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def read_tag(xml: bytes) -> Tag | None:
    """Our tag in a sidecar's bytes (None when no run wrote one)."""
    try:
        return _tag_of(_parse(xml))
    except RecursionError:
        raise XmpError("nested too deeply to be XMP a photo manager wrote: left as it is") from None


MAX_SIDECAR = 16 << 20
"""The largest sidecar read (a photo manager's are a few kilobytes)."""


def read_sidecar(path: Path) -> bytes:
    """The bytes of a sidecar once it is a regular file of at most `MAX_SIDECAR` bytes (not a link, a FIFO or a
    device: reading one could block or never end)."""
    try:
        return read_regular(path, MAX_SIDECAR, follow=False)
    except SpecialFileError as e:
        raise XmpError(f"{e}: left as it is") from None


def _tag_of(root: ET.Element) -> Tag | None:
    ours = next((d for d in root.iter(_q(RDF, "Description")) if d.find(_q(HL, "class")) is not None), None)
    if ours is None:
        return None
    ours_kw = [s.removeprefix(HIERARCHY) for s in _all(root, LR, "hierarchicalSubject") if s.startswith(HIERARCHY)]
    filed = [k for k in ours_kw if k != TO_REVIEW]
    try:
        p = float(ours.findtext(_q(HL, "probability")))
    except (TypeError, ValueError):
        p = float("nan")
    top, model, by = (ours.findtext(_q(HL, k)) or "" for k in ("class", "model", "decidedBy"))
    return Tag(filed[0] if filed else None, top, p, model, by)


def merged(existing: bytes | None, tag: Tag) -> bytes:
    """The sidecar with `tag` in it: `existing`'s content kept, what an earlier run added replaced."""
    return _merged(_parse(existing) if existing else ET.Element(_q(X, "xmpmeta")), tag)


def _merged(root: ET.Element, tag: Tag) -> bytes:
    rdf = root if root.tag == _q(RDF, "RDF") else root.find(_q(RDF, "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q(RDF, "RDF"))
    descriptions = rdf.findall(_q(RDF, "Description"))
    ours = next((d for d in descriptions if d.find(_q(HL, "class")) is not None), None)
    added = _bag(ours, HL, "keywordsAdded") if ours is not None else []
    if ours is None:
        ours = ET.SubElement(rdf, _q(RDF, "Description"), {_q(RDF, "about"): ""})
    subject_home = next((d for d in descriptions if d.find(_q(DC, "subject")) is not None), ours)
    subjects = [s for s in _bag(subject_home, DC, "subject") if s not in added]
    keyword = tag.filed or TO_REVIEW
    now_added = [keyword] if keyword not in subjects else []
    _set_bag(subject_home, DC, "subject", subjects + now_added)
    hier_home = next((d for d in descriptions if d.find(_q(LR, "hierarchicalSubject")) is not None), ours)
    hier = [s for s in _bag(hier_home, LR, "hierarchicalSubject") if not s.startswith(HIERARCHY)]
    _set_bag(hier_home, LR, "hierarchicalSubject", [*hier, HIERARCHY + keyword])
    fields = {
        "class": tag.top,
        "probability": f"{tag.probability:.4f}",
        "model": tag.model,
        "decidedBy": tag.decided_by,
    }
    for name, value in fields.items():
        el = ours.find(_q(HL, name))
        (el if el is not None else ET.SubElement(ours, _q(HL, name))).text = value
    _set_bag(ours, HL, "keywordsAdded", now_added)
    return _serialize(root)


def write_sidecar(photo: Path, tag: Tag, shared: bool | None = None) -> Path | None:
    """Merge `tag` into the photo's sidecar (`sidecar_path`), atomically, keeping its mode and owner; None when it
    said so already (nothing written). A read-only sidecar is left as it is (`XmpError`)."""
    written = _rewrite(sidecar_path(photo, shared), lambda _: tag)
    return written[0] if written else None


def retag_sidecar(photo: Path, retag: Callable[[Tag], Tag]) -> tuple[Path, bytes] | None:
    """Rewrite the tag a sort wrote in the photo's sidecar as `retag(that tag)`, reading the sidecar once: (its
    path, its bytes before) when written; None when no sort wrote one or it says so already."""
    return _rewrite(sidecar_path(photo), retag, only_ours=True)


def _rewrite(path: Path, make: Callable[[Tag | None], Tag], only_ours: bool = False) -> tuple[Path, bytes] | None:
    try:
        if path.is_symlink():
            raise XmpError("a symbolic link: left as it is")
        before = read_sidecar(path) if path.exists() else b""
        root = _parse(before) if before else ET.Element(_q(X, "xmpmeta"))
        old = _tag_of(root)
        if old is None and only_ours:
            return None
        tag = make(old)
        tag = dataclasses.replace(tag, probability=round(tag.probability, 4))  # as written
        if old == tag:
            return None
        if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
            raise XmpError("read-only: left as it is")
        blob = _merged(root, tag)
    except OSError as e:
        raise XmpError(f"{path}: cannot read the sidecar ({e.strerror or e})") from None
    except XmpError as e:
        raise XmpError(f"{path}: {e}") from None
    except RecursionError:
        raise XmpError(f"{path}: nested too deeply to be XMP a photo manager wrote: left as it is") from None
    try:
        atomic_write_bytes(blob, path)
    except OSError as e:
        raise XmpError(f"{path}: cannot write the sidecar ({e.strerror or e})") from None
    return path, before


# ---------------------------------------------------------------------------------------------------------- xml


def _parse(xml: bytes) -> ET.Element:
    """The root element (one pass over the bytes), every namespace prefix of the file registered so that writing
    keeps them."""
    try:
        events = ET.iterparse(io.BytesIO(xml), events=("start-ns",))
        for _, (prefix, uri) in events:
            if prefix and prefix not in PREFIXES:
                try:
                    ET.register_namespace(prefix, uri)
                except ValueError:  # a prefix ElementTree reserves (ns0...): it writes its own name
                    pass
        root = events.root
    except ET.ParseError as e:
        raise XmpError(f"not XMP ({e}): sidecar left as it is") from None
    if root.tag not in (_q(X, "xmpmeta"), _q(RDF, "RDF")):
        raise XmpError(f"not XMP (its root is {root.tag}): sidecar left as it is")
    return root


def _bag(d: ET.Element, ns: str, name: str) -> list[str]:
    """The text items of a property's bag (items in resource form, `rdf:resource=...`, are `_resources`)."""
    prop = d.find(_q(ns, name))
    return [] if prop is None else [li.text or "" for li in prop.iter(_q(RDF, "li")) if not _is_resource(li)]


def _is_resource(li: ET.Element) -> bool:
    return not (li.text or "").strip() and (len(li) > 0 or bool(li.attrib))


def _all(root: ET.Element, ns: str, name: str) -> list[str]:
    return [li.text or "" for prop in root.iter(_q(ns, name)) for li in prop.iter(_q(RDF, "li"))]


def _set_bag(d: ET.Element, ns: str, name: str, items: list[str]) -> None:
    """The property as an rdf:Bag of `items` (removed when empty), where it was in `d` or appended."""
    prop = d.find(_q(ns, name))
    kept = [] if prop is None else [li for li in prop.iter(_q(RDF, "li")) if _is_resource(li)]  # a person's: kept
    if not items and not kept:
        if prop is not None:
            d.remove(prop)
        return
    if prop is None:
        prop = ET.SubElement(d, _q(ns, name))
    prop.clear()
    bag = ET.SubElement(prop, _q(RDF, "Bag"))
    bag.extend(kept)
    for item in items:
        ET.SubElement(bag, _q(RDF, "li")).text = item


def _serialize(root: ET.Element) -> bytes:
    for prefix, uri in PREFIXES.items():
        ET.register_namespace(prefix, uri)
    ET.indent(root, space=" ")
    return (PACKET[0] + ET.tostring(root, encoding="unicode") + PACKET[1]).encode("utf-8")


def sidecar_tag(row: dict, model: str):
    """What a photo's sidecar says for its `sort.csv` row: its class as a keyword when filed (by the model or a
    person, and which), 'to review' when it waits in `_uncertain/`."""
    filed = row["copied_to"].split("/")[0] != UNSURE_FOLDER
    top, by = row.get("model_class") or row["class"], "person" if row.get("decided") == "person" else "model"
    return Tag(row["class"] if filed else None, top, row["p"], model, by)
