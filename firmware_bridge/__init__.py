"""Serial protocol between the inspection head and the line controller (docs/protocol.md).

``codec`` frames and CRC, ``protocol`` messages and the verdict payload, ``journal`` the
verdict journal, ``port`` a serial port that is reopened when it comes back, ``inspector`` what
the server drives, ``server`` the head's end (``glass-inspect serve``), ``client`` the line's
end, ``linesim`` a line-controller simulator (``glass-inspect line-sim``), ``cli`` the two
subcommands.
"""
