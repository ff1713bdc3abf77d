"""Who is calling and where a request goes. Pure: no trio, no sockets, no clock."""
