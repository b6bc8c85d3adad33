"""Payment links: a CRM contact plus line items become a finalised, Stripe-hosted invoice.

``invoice.py`` validates requests and builds Stripe parameters (pure), ``customers.py`` finds or
creates the contact's Stripe customer, ``ops.py`` and ``job.py`` hold the ``create_payment_link``
job.
"""
