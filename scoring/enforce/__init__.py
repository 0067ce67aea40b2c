"""Enforcement beyond the process: stormguard's blocks pushed to firewalls, proxies and CrowdSec, and CrowdSec's
decisions pulled into the reputation store.

* :mod:`.blocks` — what is blocked now (the store's block index, plus clients whose score alone refuses them), with
  the source of each block (model, rules, operator, crowdsec).
* :mod:`.ranges` — address ranges matched without expanding them into per-address keys.
* :mod:`.lapi` — a small client of the CrowdSec Local API (bouncer and machine sides).
* :mod:`.crowdsec_import` — stormguard as a CrowdSec bouncer: decisions → blocks, captcha → low tier.
* :mod:`.crowdsec_export` — stormguard as a CrowdSec source: blocks → alerts, through :mod:`.spool`, a bounded
  on-disk queue that survives Local API outages.
* :mod:`.nftables` and :mod:`.blocklist` — the blocks as an nftables table with timeouts, or as files for proxies.
"""
