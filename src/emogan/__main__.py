from emogan.cli import main

main()
