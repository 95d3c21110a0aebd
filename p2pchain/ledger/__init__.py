"""Pure consensus code: types, canonical bytes, merkle, proof of work and validation.

Nothing here touches a socket, the clock or the disk: time comes in as an argument.
"""
