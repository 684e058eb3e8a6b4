from dropwire.local_emulator.cli import main

main()
