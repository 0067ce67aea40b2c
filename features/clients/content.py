"""Request-content evidence — what a client *asks for* — defined once for the batch and online feature paths.

A client's rate says how often it comes; the paths, methods and statuses of its requests say what it is doing.
Browsers fetch pages *and* their assets (css, js, images, fonts), follow links (a referer), mostly get 2xx/3xx;
vulnerability scanners and exploit bots ask for thousands of distinct paths that do not exist (404s), probe
script and backup extensions, dot-files and admin roots, and send payloads (traversal, injection, remote include).

Like every client feature, the counts cover the records that open a connection (:mod:`.vector`): in access logs
every request; in captures, further keep-alive requests on one TCP connection are not counted.

Every function here classifies *one* request field value; :mod:`.windows` calls each once per distinct value
(cached), :mod:`.online` once per request. The window features built from them are declared in :mod:`.vector`.

How the vocabularies were chosen (counted, not copied): over SecLists ``quickhits.txt`` (2,482 probe paths) the
most frequent final extensions are php, txt, log, xml, sql, yml, ini, old, bak, asp, inc, gz, aspx, swp, mdb, sqlite,
zip, config, conf, rar, tar; 16 % of the paths hold a dot-file segment (``.git``, ``.env``, ``.idea``, ``.ssh``,
``.svn``, ``.htaccess``); the most frequent first segments are admin, actuator, app, bitrix, tmp, config, includes,
fckeditor. In the Apache log of ordinary traffic the most frequent extensions are png, css, html, ico, jpg, js. The
lists below group those findings into *kinds* (server-side script, backup/config/data file, admin/CMS root) that
also cover paths no list holds; no path of a corpus file is matched literally.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from urllib.parse import unquote

#: Status classes, in the order of the ``status_*`` feature columns.
STATUS_CLASSES: tuple[str, ...] = ("2xx", "3xx", "401_403", "404", "4xx_other", "5xx")

#: Method classes counted (GET and other well-known methods count only towards ``n_method``).
METHOD_CLASSES: tuple[str, ...] = ("head", "options", "post", "other")
_KNOWN_METHODS = {"GET", "HEAD", "OPTIONS", "POST", "PUT", "DELETE", "PATCH"}

#: Assets a browser fetches for a page.
STATIC_EXTENSIONS = frozenset({"css", "js", "mjs", "png", "jpg", "jpeg", "gif", "ico", "svg", "webp", "avif", "bmp",
                               "woff", "woff2", "ttf", "otf", "eot", "map"})
#: Server-side script extensions: what scanners probe for code to run or exploit.
SCRIPT_EXTENSIONS = frozenset({"php", "php3", "php4", "php5", "phtml", "asp", "aspx", "ashx", "asmx", "jsp", "jspx",
                               "cgi", "pl", "cfm", "do", "action", "py", "rb", "sh", "exe", "dll"})
#: Backups, configuration, logs, databases and archives: what scanners probe for leaked data.
BACKUP_EXTENSIONS = frozenset({"bak", "old", "orig", "save", "swp", "swo", "tmp", "sql", "sqlite", "sqlite3", "db",
                               "mdb", "dump", "ini", "conf", "config", "cfg", "yml", "yaml", "env", "log", "inc", "dist",
                               "tar", "tgz", "gz", "zip", "rar", "7z", "bz2", "war", "lock", "pem", "key", "htpasswd",
                               "htaccess"})
#: Admin panels, CMS internals, management endpoints and installers (any path segment, case-insensitive).
ADMIN_SEGMENTS = frozenset({
    "admin", "administrator", "admins", "adm", "admincp", "backend", "cpanel", "wp-admin", "wp-login.php",
    "wp-includes", "wp-content", "xmlrpc.php", "phpmyadmin", "myadmin", "pma", "_phpmyadmin", "mysql", "dbadmin",
    "manager", "console", "actuator", "cgi-bin", "setup", "install", "installer", "bitrix", "joomla", "drupal",
    "typo3", "fckeditor", "ckeditor", "elfinder", "webdav", "shell", "cmd", "server-status", "jmx-console",
    "solr", "vendor", "phpunit", "boaform", "hnap1", "owa", "autodiscover",
})
#: Payload markers in a (percent-decoded, lower-cased) path or User-Agent: traversal, NUL, script/SQL injection,
#: system files, shellshock, remote file include, PHP/stream wrappers, JNDI lookups, command execution.
ATTACK_MARKERS = re.compile(
    r"\.\./|\.\.\\|\x00|<script|javascript:|onerror\s*=|union(?:\s|\+|/\*.*?\*/)+(?:all\s+)?select|select\s.+\sfrom\s"
    r"|'\s*or\s+'?\d|\bor\s+1\s*=\s*1|sleep\s*\(|benchmark\s*\(|waitfor\s+delay|/etc/passwd|/etc/shadow|win\.ini"
    r"|boot\.ini|\(\)\s*\{|=\s*(?:https?|ftp)://|(?:php|data|expect|file|zip|phar|input)://|\$\{jndi:|\$\{\$|"
    r"cmd\.exe|/bin/(?:ba)?sh|\bwget\s|\bcurl\s|base64_decode|eval\s*\(|exec\s*\(|system\s*\(|passthru|"
    r"[\r\n]|-->|expression\s*\(|\(\s*select\b|\bchar\s*\(|concat\s*\(|\b0x[0-9a-f]{4,}\b"
    r"|%(?:2e|2f|5c|00|3c|27|0d|0a)"  # still encoded after two decodes: triple encoding is an evasion attempt
)
#: Request targets longer than this (characters, path + query) are "long URLs" (overflows, payloads).
LONG_URL_CHARS = 200

#: Per-path values, in this order: see :func:`path_evidence`.
PATH_VALUES: tuple[str, ...] = ("path_depth", "query_length", "query_entropy", "static_asset", "script_ext",
                                "backup_ext", "dotfile", "admin_root", "attack_marker", "long_url", "robots_txt")

_EXT = re.compile(r"\.([a-z0-9_~-]{1,10})$")


def _decoded(text: str) -> str:
    """Percent-decoded twice (double encoding is common in probes) and lower-cased."""
    return unquote(unquote(text, errors="replace"), errors="replace").lower()


def char_entropy(text: str) -> float:
    """Shannon entropy (bits per character) of ``text``; 0 for the empty string."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _extension(segment: str) -> str | None:
    m = _EXT.search(segment.rstrip("~"))
    if m is None:
        return None
    ext = m.group(1)
    return "bak" if segment.endswith("~") or ext.isdigit() else ext  # index.php~, config.php.1: backups


@lru_cache(maxsize=65536)
def path_evidence(target: str) -> tuple[float, ...]:
    """The :data:`PATH_VALUES` of one request target (path with optional query), as floats (flags are 0/1).

    ``path_depth``: non-empty segments; ``query_length`` / ``query_entropy``: characters and character entropy of
    the query string; ``static_asset``, ``script_ext``, ``backup_ext``: the last segment's extension kind;
    ``dotfile``: a segment starting with a dot (not ``.``/``..``; ``/.well-known/`` is ordinary); ``admin_root``:
    a segment naming an admin/CMS/management root or containing ``admin`` (siteadmin, webadmin, ...); ``attack_marker``: a payload marker anywhere in the decoded
    target; ``long_url``: more than :data:`LONG_URL_CHARS` characters; ``robots_txt``: the target is /robots.txt.
    """
    raw_path, _, query = target.partition("?")
    decoded = _decoded(raw_path)
    segments = [s for s in decoded.split("/") if s]
    last = segments[-1] if segments and not decoded.endswith("/") else ""
    ext = _extension(last) if last else None
    dot = any(s.startswith(".") and s not in (".", "..") and s != ".well-known" for s in segments)
    admin = any(s in ADMIN_SEGMENTS or "admin" in s for s in segments)
    marker = ATTACK_MARKERS.search(_decoded(target)) is not None
    return (float(len(segments)), float(len(query)), char_entropy(query), float(ext in STATIC_EXTENSIONS),
            float(ext in SCRIPT_EXTENSIONS), float(ext in BACKUP_EXTENSIONS), float(dot), float(admin),
            float(marker), float(len(target) > LONG_URL_CHARS), float(decoded == "/robots.txt"))


@lru_cache(maxsize=16384)
def ua_attack_marker(user_agent: str) -> bool:
    """A payload in the User-Agent (shellshock ``() {``, JNDI, injection): counted with the path markers."""
    return ATTACK_MARKERS.search(_decoded(user_agent)) is not None


def method_class(method: str) -> str | None:
    """``head``, ``options``, ``post``, ``other`` (CONNECT, TRACE, PROPFIND, garbage) or None (GET, PUT…)."""
    m = method.upper()
    if m in ("HEAD", "OPTIONS", "POST"):
        return m.lower()
    return None if m in _KNOWN_METHODS else "other"


def status_class(status: int) -> int | None:
    """Index into :data:`STATUS_CLASSES`, or None (1xx and out-of-range codes count only towards ``n_status``)."""
    if 200 <= status < 300:
        return 0
    if 300 <= status < 400:
        return 1
    if status in (401, 403):
        return 2
    if status == 404:
        return 3
    if 400 <= status < 500:
        return 4
    if 500 <= status < 600:
        return 5
    return None


def is_http10(version: str) -> bool:
    """HTTP/1.0 (or 0.9): rare from browsers, common from scripts and scanners."""
    return version.upper() in ("HTTP/1.0", "HTTP/0.9")
