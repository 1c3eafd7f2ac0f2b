"""What a GPU instance costs against the CPU instance that could do its job: the price catalog
(embedded list prices + the refreshed cache), the pure assessment (premium, CPU equivalent) and
the refresh from each cloud's price API (``refresh`` + ``refresh_aws`` / ``refresh_gcp``).

Exports the catalog (``PriceCatalog``, ``TypePrice``, ``load_catalog``), ``assess`` and
``rightsize`` (the cheaper machine that would do an instance's measured work).
"""

from guardian.prices.assessment import PriceCatalog, TypePrice, assess
from guardian.prices.catalog import load_catalog
from guardian.prices.rightsize import Sizing, rightsize

__all__ = ["PriceCatalog", "Sizing", "TypePrice", "assess", "load_catalog", "rightsize"]
