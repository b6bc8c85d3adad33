"""Local tooling around the project: the ``make dev`` launcher, its demo data and URL shortener.

None of it runs in production; the production image leaves this package (and the Stripe sandbox)
out.
"""
