from mer_tune.cli import main

main()
