"""What a GPU instance costs against the CPU instance that could do its job: the price catalog
(embedded list prices + the refreshed cache), the pure assessment (premium, CPU equivalent) and
the refresh from each cloud's price API (``refresh`` + ``refresh_aws`` / ``refresh_gcp``).

Exports the catalog (``PriceCatalog``, ``TypePrice``, ``load_catalog``) and ``assess``.
"""

from guardian.prices.assessment import PriceCatalog, TypePrice, assess
from guardian.prices.catalog import load_catalog

__all__ = ["PriceCatalog", "TypePrice", "assess", "load_catalog"]
