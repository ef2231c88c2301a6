"""The operator's command line, installed as the `voucherstream` console script: it works across
every service (schemas, keys, campaigns), so it lives outside `shared/`, which holds libraries only."""
