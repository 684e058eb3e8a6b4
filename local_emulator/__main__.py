from local_emulator.cli import main

main()
