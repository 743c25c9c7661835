import socket,sys
s=socket.create_connection(('127.0.0.1',32141)); f=s.makefile('rb'); f.readline()
s.sendall(b'LHLO x\r\n')
while f.readline()[3:4]==b'-': pass
for i in range(int(sys.argv[1])):
    s.sendall(b'MAIL FROM:<a@x>\r\nRCPT TO:<blocked@y>\r\nRCPT TO:<ok@y>\r\nDATA\r\n')
    for j in range(4): f.readline()
    s.sendall(b'Subject: x\r\n\r\n'+b'y'*2000+b'\r\n.\r\n')
    for j in range(2): f.readline()
