"""Everything that speaks to MTT: OAuth 2.0 (``oauth``), tokens (``tokens``, ``auth``), the API
(``client``, ``models``)."""
