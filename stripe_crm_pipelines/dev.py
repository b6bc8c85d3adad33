"""``python -m stripe_crm_pipelines.dev``: the ``make dev`` launcher (see :mod:`.local.dev`)."""

from stripe_crm_pipelines.local.dev import main

if __name__ == "__main__":
    raise SystemExit(main())
