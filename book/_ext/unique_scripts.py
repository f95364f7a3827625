"""Sphinx extension: include each script of a page once.

With Sphinx 7.4.7 and sphinx-thebe 0.3.1 (as installed with jupyter-book 1.0.4), the inline
configuration script, which declares `const THEBE_JS_URL`, is added to every page twice. The
second declaration throws a SyntaxError in the browser. This drops repeated scripts, comparing
file name and attributes (an inline body included) but not priority, and keeps the first.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    # Sphinx 7.4 passes `_JavaScript` objects with `filename` and `attributes` (the inline body
    # included). An inline script has filename None or "", depending on the registration path,
    # which is why Sphinx's own duplicate check misses the repeat. Older Sphinx passes strings.
    filename = getattr(script, "filename", script) or ""
    attributes = getattr(script, "attributes", {})
    return (filename, tuple(sorted((name, str(value)) for name, value in attributes.items())))


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    # Priority 900 runs after the theme and extensions have added their scripts (default 500).
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

