from litecoder.cli import main

main()
