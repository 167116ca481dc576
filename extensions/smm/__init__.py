"""The `smm` extension: the Smart Metrology Meter (IEC 62056-21 optical/RS-485) and Modbus
meters (RTU and TCP) read into the core with docs/DATA-MODEL.md names, units and signs."""
