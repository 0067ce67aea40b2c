"""GeoIP country and ASN of a client address, from MaxMind databases whose paths are configured.

Optional by design: with no database configured :meth:`GeoLookup.from_config` returns None and every GeoIP
feature (heat per country/ASN) is simply absent. Lookups are cached because the same addresses reconnect in storms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stormguard.config import GeoipConfig


@dataclass(frozen=True, slots=True)
class GeoInfo:
    country: str | None = None
    asn: int | None = None
    asn_org: str | None = None


NOWHERE = GeoInfo()


class GeoLookup:
    """Country (from a Country or City database) and ASN (from an ASN database) of an IP address."""

    def __init__(self, country_db: str | Path | None = None, asn_db: str | Path | None = None,
                 cache_size: int = 65_536) -> None:
        try:
            import geoip2.database
        except ImportError as exc:  # only an error when a database is configured
            raise RuntimeError("GeoIP databases are configured but geoip2 is not installed "
                               "(pip install geoip2)") from exc
        self._country: Any = geoip2.database.Reader(str(country_db)) if country_db else None
        self._asn: Any = geoip2.database.Reader(str(asn_db)) if asn_db else None
        self._country_kind = ""
        if self._country is not None:
            kind = self._country.metadata().database_type
            self._country_kind = "city" if "City" in kind else "country"
        self.lookup = functools.lru_cache(maxsize=cache_size)(self._lookup)  # type: ignore[method-assign]

    @classmethod
    def from_config(cls, cfg: GeoipConfig) -> GeoLookup | None:
        if not cfg.country_db and not cfg.asn_db:
            return None
        return cls(cfg.country_db or None, cfg.asn_db or None)

    def _lookup(self, ip: str) -> GeoInfo:
        import geoip2.errors

        country = asn = org = None
        try:
            if self._country is not None:
                rec = self._country.city(ip) if self._country_kind == "city" else self._country.country(ip)
                country = rec.country.iso_code
        except (geoip2.errors.AddressNotFoundError, ValueError):
            pass
        try:
            if self._asn is not None:
                a = self._asn.asn(ip)
                asn, org = a.autonomous_system_number, a.autonomous_system_organization
        except (geoip2.errors.AddressNotFoundError, ValueError):
            pass
        return GeoInfo(country, asn, org) if (country or asn) else NOWHERE

    def lookup(self, ip: str) -> GeoInfo:  # replaced per instance by a cached version in __init__
        return self._lookup(ip)

    def close(self) -> None:
        for reader in (self._country, self._asn):
            if reader is not None:
                reader.close()
