"""Field protocols that more than one extension speaks, in one place.

Each module is one concept and is imported on its own (nothing here is imported eagerly, so an
extension that reads only a serial line never loads pymodbus or the SunSpec definitions):

- `modbus_link`: one pymodbus client per serial port or TCP endpoint, shared by its devices
- `modbus_maps`: register maps as data (TOML): plan the reads, decode and encode values
- `sunspec_models`: SunSpec model definitions (from pysunspec2) and decoding of a model
- `sunspec`: SunSpec discovery ('SunS' marker, model chain) and model reads over a Modbus link
- `serial_line`: a serial port shared by the devices on it: baud switch on the open port,
  reads up to a terminator with timeouts, aborting a blocked read
"""

__all__ = ["modbus_link", "modbus_maps", "serial_line", "sunspec", "sunspec_models"]
