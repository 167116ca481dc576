"""energy_router: the S4G Energy Router's two controllers (inverter, battery+PV) over their
serial lines. docs/ENERGY-ROUTER.md has the protocol, the points, their signs and the config."""
