"""Who the user is: accounts, sessions and their timeouts, the hosted login (email codes, passkeys), rate
limits, and the housekeeping jobs for them."""
