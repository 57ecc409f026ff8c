from embedpipe.cli.app import main

main()
