"""The verdict link between the inspection head and the line controller: our serial
protocol (docs/protocol.md) and Modbus RTU/TCP (docs/modbus.md).

``inspection`` the inspection service every link drives (one job at a time, the journal,
acknowledgements), ``links`` which module speaks each ``[verdict_link] kind``,
``modbus_link`` the Modbus server, ``codec`` frames and CRC, ``protocol`` messages and the
verdict payload, ``journal`` the verdict journal, ``port`` a serial port that is reopened
when it comes back, ``inspector`` what the server drives, ``server`` the head's end of the
ASCII protocol (``glass-inspect serve``), ``client`` the line's end, ``linesim`` a
line-controller simulator (``glass-inspect line-sim``), ``cli`` the subcommands.
"""
