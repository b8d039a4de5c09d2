from examples.partner_site.site import main

main()
