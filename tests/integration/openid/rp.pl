#!/usr/bin/perl
# A relying party built on Perl's Net::OpenID::Consumer, for interop tests.
#
#   rp.pl begin    OP_IDENTIFIER REALM RETURN_TO CACHE
#       prints the URL to send the browser to (directed identity, SReg email)
#   rp.pl complete RETURN_URL    REALM CACHE
#       verifies the provider's answer; prints one line:
#       VERIFIED <claimed id> <email> | SETUP_NEEDED | CANCELLED | ERROR <code> <text>
#
# CACHE is a file that keeps associations and seen nonces between the two
# steps (a stateful relying party), or "-" for none (stateless: every
# assertion is checked with the provider by check_authentication).
use strict;
use warnings;

package FileCache;
use Storable qw(retrieve nstore);

sub new { my ($class, $file) = @_; return bless { file => $file }, $class }
sub _load { my $self = shift; return -e $self->{file} ? retrieve($self->{file}) : {} }
sub get { my ($self, $key) = @_; return $self->_load->{$key} }

sub set {
    my ($self, $key, $value) = @_;
    my $data = $self->_load;
    $data->{$key} = $value;
    nstore($data, $self->{file});
}

package main;

use LWP::UserAgent;
use Net::OpenID::Consumer;
use URI;

my $SREG = "http://openid.net/extensions/sreg/1.1";

sub consumer {
    my ($realm, $cache) = @_;
    my $ua = LWP::UserAgent->new(timeout => 20);
    return Net::OpenID::Consumer->new(
        ua              => $ua,
        consumer_secret => "interop-test-secret",
        required_root   => $realm,
        minimum_version => 2,
        ($cache ne "-" ? (cache => FileCache->new($cache)) : ()),
        assoc_options   => [ max_encrypt => 1 ],
    );
}

my $command = shift @ARGV // "";
if ($command eq "begin") {
    my ($op, $realm, $return_to, $cache) = @ARGV;
    my $csr = consumer($realm, $cache);
    my $claimed = $csr->claimed_identity($op)
        or die "discovery failed: " . $csr->err . "\n";
    $claimed->set_extension_args($SREG, { required => "email" });
    print $claimed->check_url(
        return_to      => $return_to,
        trust_root     => $realm,
        delayed_return => 1,
    ), "\n";
    exit 0;
}
if ($command eq "complete") {
    my ($url, $realm, $cache) = @ARGV;
    my %args = URI->new($url)->query_form;
    my $csr = consumer($realm, $cache);
    $csr->args(\%args);
    $csr->handle_server_response(
        not_openid   => sub { print "ERROR not_openid -\n" },
        setup_needed => sub { print "SETUP_NEEDED\n" },
        cancelled    => sub { print "CANCELLED\n" },
        verified     => sub {
            my $vident = shift;
            my $sreg = $vident->signed_extension_fields($SREG) || {};
            print "VERIFIED ", $vident->url, " ", ($sreg->{email} // "-"), "\n";
        },
        error => sub {
            my ($code, $text) = @_;
            $text //= "";
            $text =~ s/\s+/ /g;
            print "ERROR $code $text\n";
        },
    );
    exit 0;
}
die "usage: rp.pl begin OP REALM RETURN_TO CACHE | rp.pl complete URL REALM CACHE\n";
