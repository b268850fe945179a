import logging

logger = logging.getLogger("parley.billing")
