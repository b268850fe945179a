"""parley-billing: the usage ledger, prices, budgets and savings reports of Parley."""

from .events import Usage, UsageType
from .ledger import Ledger
from .pricing import LEVERS, Priced, Pricer

__all__ = ["LEVERS", "Ledger", "Priced", "Pricer", "Usage", "UsageType"]
